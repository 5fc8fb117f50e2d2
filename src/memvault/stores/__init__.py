"""Domain stores: each owns its tables and speaks the domain, never HTTP."""
