/* cachecli.h - `regmesh cache ls|stat|rm|pin|unpin|verify|warm`. */
#ifndef REGMESH_NODE_CACHECLI_H
#define REGMESH_NODE_CACHECLI_H

/* cachecli runs the command in argv[0] with its options; returns the exit
 * code (0 ok, 1 failed, 2 usage, 3 verify found corrupt blobs). */
int cachecli(int argc, char **argv);

#endif
