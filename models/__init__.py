"""Backbone cards and weights shipped with edgetl."""
