"""Jobs as plain data: states, events, records, templates, usage. Pure: no I/O."""
