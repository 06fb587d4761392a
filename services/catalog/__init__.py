"""catalog: the products customers can browse and order."""
