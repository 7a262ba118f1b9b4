/* http_server.c - placeholder until written. */
