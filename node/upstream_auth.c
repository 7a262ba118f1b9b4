/* upstream_auth.c - placeholder until written. */
