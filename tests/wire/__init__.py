"""The protocol's messages and the two dialects, the seed's kept byte for byte."""
