/* config_tree.c - YAML text to a small node tree, with marks.
 *
 * libyaml's document API resolves aliases and hides where a node came from
 * once it is built, and its loader has no nesting bound. So we drive the
 * event parser ourselves and build our own tree: every node keeps its
 * 1-based line and column for error messages, anchors and aliases are
 * recorded (never resolved, so no "billion laughs"), nesting is bounded by
 * a fixed stack and the node count by a cap. Nodes and strings come from one
 * arena, freed at once: the tree lives only for the duration of a load.
 *
 * The file also owns the one-line error format, "name:line:col: path: why",
 * so syntax errors and schema errors look the same.
 */
#include "config_internal.h"

#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <yaml.h>

/* A configuration is a few levels deep (top -> upstreams -> item -> key);
 * anything much deeper is garbage or an attack on the parser's stacks. */
#define TREE_MAX_DEPTH 32
/* 64 upstreams of ~15 keys is ~2000 nodes; far more is not a config. */
#define TREE_MAX_NODES 100000
#define ARENA_BLOCK 16384

struct arena_block {
  struct arena_block *next;
  size_t used, cap;
  max_align_t data[];
};

struct config__arena {
  struct arena_block *head;
};

static void *arena_alloc(struct config__arena *a, size_t n) {
  n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
  struct arena_block *b = a->head;
  if (b == NULL || b->cap - b->used < n) {
    size_t cap = n > ARENA_BLOCK ? n : ARENA_BLOCK;
    b = malloc(sizeof *b + cap);
    if (b == NULL)
      return NULL;
    b->next = a->head;
    b->used = 0;
    b->cap = cap;
    a->head = b;
  }
  void *p = (char *)b->data + b->used;
  b->used += n;
  return p;
}

static void arena_free(struct config__arena *a) {
  if (a == NULL)
    return;
  struct arena_block *b = a->head;
  while (b != NULL) {
    struct arena_block *next = b->next;
    free(b);
    b = next;
  }
  free(a);
}

void config__error(char *err, size_t errlen, const char *name, unsigned line,
                   unsigned col, const char *path, const char *fmt, ...) {
  if (err == NULL || errlen == 0)
    return;
  int n;
  if (path != NULL && path[0] != '\0')
    n = snprintf(err, errlen, "%s:%u:%u: %s: ", name, line, col, path);
  else
    n = snprintf(err, errlen, "%s:%u:%u: ", name, line, col);
  if (n < 0 || (size_t)n >= errlen)
    return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
  va_end(ap);
}

const char *config__quote(char *buf, size_t buflen, const char *s, size_t len) {
  return config__quote_max(buf, buflen, s, len, 40);
}

const char *config__quote_max(char *buf, size_t buflen, const char *s,
                              size_t len, size_t max) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0, shown = 0;
  if (buflen == 0)
    return "";
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)s[i];
    if (shown == max || o + 8 > buflen) {
      if (o + 4 <= buflen) {
        memcpy(buf + o, "...", 3);
        o += 3;
      }
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      buf[o++] = (char)c;
    } else {
      buf[o++] = '\\';
      buf[o++] = 'x';
      buf[o++] = hex[c >> 4];
      buf[o++] = hex[c & 15];
    }
    shown++;
  }
  buf[o] = '\0';
  return buf;
}

/* A reader error (bad UTF-8, control character) carries a byte offset but no
 * mark; count lines and characters up to it ourselves. */
static void offset_to_mark(const char *s, size_t len, size_t off,
                           unsigned *line, unsigned *col) {
  *line = 1;
  *col = 1;
  if (off > len)
    off = len;
  for (size_t i = 0; i < off; i++) {
    if (s[i] == '\n') {
      (*line)++;
      *col = 1;
    } else if (((unsigned char)s[i] & 0xc0) != 0x80) {
      (*col)++;
    }
  }
}

static int syntax_error(const yaml_parser_t *p, const char *yaml, size_t len,
                        const char *name, char *err, size_t errlen) {
  unsigned line, col;
  const char *problem = p->problem ? p->problem : "invalid YAML";
  switch (p->error) {
  case YAML_MEMORY_ERROR:
    config__error(err, errlen, name, 1, 1, NULL, "out of memory");
    return UV_ENOMEM;
  case YAML_READER_ERROR:
    offset_to_mark(yaml, len, p->problem_offset, &line, &col);
    if (p->problem_value != -1)
      config__error(err, errlen, name, line, col, NULL, "%s (byte 0x%02x)",
                    problem, (unsigned)p->problem_value & 0xff);
    else
      config__error(err, errlen, name, line, col, NULL, "%s", problem);
    return RM_ECONFIG;
  default:
    line = (unsigned)p->problem_mark.line + 1;
    col = (unsigned)p->problem_mark.column + 1;
    if (p->context != NULL)
      config__error(err, errlen, name, line, col, NULL, "%s (%s at %u:%u)",
                    problem, p->context, (unsigned)p->context_mark.line + 1,
                    (unsigned)p->context_mark.column + 1);
    else
      config__error(err, errlen, name, line, col, NULL, "%s", problem);
    return RM_ECONFIG;
  }
}

static int is_null_text(const char *s, size_t len) {
  return len == 0 || (len == 1 && s[0] == '~') ||
         (len == 4 && (memcmp(s, "null", 4) == 0 || memcmp(s, "Null", 4) == 0 ||
                       memcmp(s, "NULL", 4) == 0));
}

/* Builder state: the open containers and the tail of each, so appending a
 * child is O(1). */
struct builder {
  struct config__tree *t;
  struct config__node *stack[TREE_MAX_DEPTH];
  struct config__node *tail[TREE_MAX_DEPTH];
  size_t depth;
  size_t n_nodes;
  const char *name;
  char *err;
  size_t errlen;
};

static int add_node(struct builder *b, const yaml_event_t *ev,
                    enum config__kind kind, struct config__node **out) {
  unsigned line = (unsigned)ev->start_mark.line + 1;
  unsigned col = (unsigned)ev->start_mark.column + 1;
  if (++b->n_nodes > TREE_MAX_NODES) {
    config__error(b->err, b->errlen, b->name, line, col, NULL,
                  "too many YAML nodes (over %d)", TREE_MAX_NODES);
    return RM_ECONFIG;
  }
  struct config__node *n = arena_alloc(b->t->arena, sizeof *n);
  if (n == NULL)
    return UV_ENOMEM;
  memset(n, 0, sizeof *n);
  n->kind = kind;
  n->line = line;
  n->col = col;
  if (b->depth == 0) {
    b->t->root = n;
  } else {
    struct config__node *parent = b->stack[b->depth - 1];
    if (b->tail[b->depth - 1] == NULL)
      parent->child = n;
    else
      b->tail[b->depth - 1]->next = n;
    b->tail[b->depth - 1] = n;
    parent->n_children++;
  }
  *out = n;
  return 0;
}

static int on_event(struct builder *b, const yaml_event_t *ev) {
  struct config__node *n;
  int rc;
  switch (ev->type) {
  case YAML_ALIAS_EVENT:
    return add_node(b, ev, CONFIG__ALIAS, &n);
  case YAML_SCALAR_EVENT: {
    if ((rc = add_node(b, ev, CONFIG__SCALAR, &n)) != 0)
      return rc;
    size_t len = ev->data.scalar.length;
    char *text = arena_alloc(b->t->arena, len + 1);
    if (text == NULL)
      return UV_ENOMEM;
    memcpy(text, ev->data.scalar.value, len);
    text[len] = '\0';
    n->text = text;
    n->len = len;
    n->has_anchor = ev->data.scalar.anchor != NULL;
    n->is_null = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
                 ev->data.scalar.tag == NULL && is_null_text(text, len);
    return 0;
  }
  case YAML_SEQUENCE_START_EVENT:
  case YAML_MAPPING_START_EVENT: {
    if (b->depth == TREE_MAX_DEPTH) {
      config__error(b->err, b->errlen, b->name,
                    (unsigned)ev->start_mark.line + 1,
                    (unsigned)ev->start_mark.column + 1, NULL,
                    "nesting deeper than %d levels", TREE_MAX_DEPTH);
      return RM_ECONFIG;
    }
    int seq = ev->type == YAML_SEQUENCE_START_EVENT;
    if ((rc = add_node(b, ev, seq ? CONFIG__SEQUENCE : CONFIG__MAPPING, &n)) !=
        0)
      return rc;
    n->has_anchor = seq ? ev->data.sequence_start.anchor != NULL
                        : ev->data.mapping_start.anchor != NULL;
    b->stack[b->depth] = n;
    b->tail[b->depth] = NULL;
    b->depth++;
    return 0;
  }
  case YAML_SEQUENCE_END_EVENT:
  case YAML_MAPPING_END_EVENT:
    /* libyaml only emits balanced events */
    if (b->depth > 0)
      b->depth--;
    return 0;
  default:
    return 0;
  }
}

int config__tree_parse(struct config__tree *t, const char *yaml, size_t len,
                       const char *name, char *err, size_t errlen) {
  yaml_parser_t p;
  yaml_event_t ev;
  struct builder b;
  int docs = 0, rc = 0, done = 0;

  t->root = NULL;
  t->arena = calloc(1, sizeof *t->arena);
  if (t->arena == NULL) {
    config__error(err, errlen, name, 1, 1, NULL, "out of memory");
    return UV_ENOMEM;
  }
  if (!yaml_parser_initialize(&p)) {
    config__tree_free(t);
    config__error(err, errlen, name, 1, 1, NULL, "out of memory");
    return UV_ENOMEM;
  }
  yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
  memset(&b, 0, sizeof b);
  b.t = t;
  b.name = name;
  b.err = err;
  b.errlen = errlen;

  while (!done && rc == 0) {
    if (!yaml_parser_parse(&p, &ev)) {
      rc = syntax_error(&p, yaml, len, name, err, errlen);
      break;
    }
    if (ev.type == YAML_STREAM_END_EVENT) {
      done = 1;
    } else if (ev.type == YAML_DOCUMENT_START_EVENT && ++docs > 1) {
      config__error(err, errlen, name, (unsigned)ev.start_mark.line + 1,
                    (unsigned)ev.start_mark.column + 1, NULL,
                    "more than one YAML document");
      rc = RM_ECONFIG;
    } else {
      rc = on_event(&b, &ev);
      if (rc == UV_ENOMEM)
        config__error(err, errlen, name, 1, 1, NULL, "out of memory");
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&p);
  if (rc != 0)
    config__tree_free(t);
  return rc;
}

void config__tree_free(struct config__tree *t) {
  arena_free(t->arena);
  t->arena = NULL;
  t->root = NULL;
}
