"""The tutorial's plots as images: loss and metric curves, and a classifier's decision line."""
