"""The paper's configurations (`recipes`), named experiments as lists of cells (`registry`),
and mode 'reproduce', which runs an experiment's cells and writes its table (`reproduce`)."""
