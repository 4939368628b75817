"""Figures and the HTML sweep report."""
