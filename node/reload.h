/* reload.h - SIGHUP's configuration reload (reload.c). */
#ifndef REGMESH_NODE_RELOAD_H
#define REGMESH_NODE_RELOAD_H

struct node;

/* node_reload reads the node's configuration file again on the thread pool
 * and applies what a running node can change; the rest is logged as
 * waiting for a restart, and a file that does not load is refused with its
 * errors. A call while a read runs reads once more after it. */
void node_reload(struct node *n);

#endif
