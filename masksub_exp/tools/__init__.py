"""Small commands around the engine: report (tables and curves from run folders), recipe_table, prepare."""
