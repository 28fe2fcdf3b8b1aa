"""Pure functions over a sweep's tables (pandas, numpy, scipy, plotly; never Ray or torch)."""
