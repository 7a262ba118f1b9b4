/* clientcfg.h - `regmesh client-config` (clientcfg.c). */
#ifndef REGMESH_NODE_CLIENTCFG_H
#define REGMESH_NODE_CLIENTCFG_H

/* clientcfg_cli runs `regmesh client-config ARGS`; returns the exit code. */
int clientcfg_cli(int argc, char **argv);

#endif
