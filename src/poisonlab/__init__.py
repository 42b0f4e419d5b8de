"""poisonlab."""
