"""The provider seam and each provider, over real HTTP where there is one."""
