/* route.c - placeholder until written. */
