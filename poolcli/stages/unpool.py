"""Max unpooling with the indices of a max_pool stage."""
