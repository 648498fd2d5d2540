"""Every `vigil` command: argument parsing and printing only; the work is done below."""
