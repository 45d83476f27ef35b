"""The paper's tables and figures as functions (the CLI's ``mlhk-viz reproduce``)."""
