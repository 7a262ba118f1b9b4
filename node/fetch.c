/* fetch.c - placeholder until written. */
