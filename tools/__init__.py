"""Build tooling for the book (not part of vae_lib): paired notebooks, the student edition."""
