"""Built-in plugin ee_report: the HTML report of a store."""
