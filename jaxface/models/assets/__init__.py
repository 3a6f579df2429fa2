"""Data files shipped inside jaxface: the embedded default face model and its licence."""
