/* reference.c - placeholder until written. */
