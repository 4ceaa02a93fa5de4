"""Models: backbone cards and building, and the classifier around a backbone."""
