/* registry.c - placeholder until written. */
