/* main.c - placeholder until written. */
