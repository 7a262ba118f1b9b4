/* upstream.c - placeholder until written. */
