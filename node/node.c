/* node.c - placeholder until written. */
