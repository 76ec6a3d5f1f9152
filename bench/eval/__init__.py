"""The evaluation behind docs/EVALUATION.md: one module per experiment family, each returning
plain data that bench/evaluate.py keeps as JSON; plots and the document are drawn from it."""
