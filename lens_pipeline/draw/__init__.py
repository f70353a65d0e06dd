"""Draw: the figure registry, the built-in figures and the display facts they share with the viewer."""
