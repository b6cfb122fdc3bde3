/* The C ABI from a C program, as firmware would use it: load, stream, cancel, errors, free.
 *
 *   cc -I bindings/include tests/c/generate.c -L "$CARGO_TARGET_DIR/release" -lpocketlm_ffi -o generate
 *   ./generate MODEL_DIR
 *
 * Exits non-zero (after printing what failed) if any check fails. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pocketlm.h"

static int failures = 0;
#define CHECK(cond, ...)                                      \
  do {                                                        \
    if (!(cond)) {                                            \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                           \
      fprintf(stderr, "\n");                                  \
      failures++;                                             \
    }                                                         \
  } while (0)

/* Collects streamed pieces; cancels after `cancel_after` pieces when set. */
struct stream {
  char text[8192];
  size_t len;
  int pieces;
  int cancel_after;
  PocketlmCancel *cancel;
};

static void on_token(const char *piece, size_t len, void *user_data) {
  struct stream *s = user_data;
  if (strlen(piece) != len) failures++; /* NUL-terminated and `len` agree */
  if (s->len + len < sizeof s->text) {
    memcpy(s->text + s->len, piece, len);
    s->len += len;
    s->text[s->len] = 0;
  }
  s->pieces++;
  if (s->cancel_after && s->pieces == s->cancel_after) pocketlm_cancel(s->cancel);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
    return 2;
  }
  PocketlmError *error = NULL;

  /* A missing model is a MODEL error with a message; nothing is returned. */
  PocketlmModel *missing = pocketlm_model_load("/nonexistent/model", 0, 0, POCKETLM_KV_CACHE_F16, &error);
  CHECK(missing == NULL, "loaded a missing model");
  CHECK(pocketlm_error_status(error) == POCKETLM_STATUS_MODEL, "status %d", pocketlm_error_status(error));
  CHECK(strstr(pocketlm_error_message(error), "nonexistent") != NULL, "message: %s", pocketlm_error_message(error));
  printf("missing model: %s: %s\n", pocketlm_status_name(pocketlm_error_status(error)), pocketlm_error_message(error));
  pocketlm_error_free(error);
  error = NULL;

  /* A KV cache type that is not a PocketlmKvCache is INVALID_INPUT, before anything is read. */
  PocketlmModel *bad_cache = pocketlm_model_load(argv[1], 0, 0, 7, &error);
  CHECK(bad_cache == NULL, "loaded with kv_cache 7");
  CHECK(pocketlm_error_status(error) == POCKETLM_STATUS_INVALID_INPUT, "status %d", pocketlm_error_status(error));
  CHECK(strstr(pocketlm_error_message(error), "kv_cache") != NULL, "message: %s", pocketlm_error_message(error));
  pocketlm_error_free(error);
  error = NULL;

  PocketlmModel *model = pocketlm_model_load(argv[1], 2, 512, POCKETLM_KV_CACHE_Q8, &error);
  CHECK(model != NULL, "load failed: %s", pocketlm_error_message(error));
  if (!model) return 1;

  /* Greedy generation, streamed on this thread; the pieces make up the returned text. */
  PocketlmParams params = pocketlm_params_default();
  CHECK(params.max_tokens == 256 && !params.has_seed, "defaults: max_tokens %u", params.max_tokens);
  params.temperature = 0;
  params.max_tokens = 24;
  struct stream s = {0};
  char *text = NULL;
  PocketlmFinishReason finish;
  PocketlmStatus st = pocketlm_generate(model, "What is the capital of France?", &params, on_token, &s, NULL, &text,
                                        &finish, &error);
  CHECK(st == POCKETLM_STATUS_OK, "generate: %s", pocketlm_error_message(error));
  CHECK(text && strcmp(text, s.text) == 0, "streamed '%s' but returned '%s'", s.text, text ? text : "(null)");
  CHECK(strstr(s.text, "Paris") != NULL, "answer: %s", s.text);
  CHECK(s.pieces > 1, "%d pieces", s.pieces);
  printf("answer (%d pieces, finish %d): %s\n", s.pieces, finish, text);
  pocketlm_string_free(text);

  /* Cancel from inside the callback after 3 pieces. */
  struct stream c = {0};
  c.cancel_after = 3;
  c.cancel = pocketlm_cancel_new();
  params.max_tokens = 200;
  st = pocketlm_generate(model, "Write a long story about a lighthouse keeper.", &params, on_token, &c, c.cancel, NULL,
                         &finish, &error);
  CHECK(st == POCKETLM_STATUS_OK, "cancelled generate: %s", pocketlm_error_message(error));
  CHECK(finish == POCKETLM_FINISH_REASON_CANCELLED, "finish %d", finish);
  CHECK(c.pieces == 3, "%d pieces after cancel", c.pieces);
  pocketlm_cancel_free(c.cancel);
  printf("cancelled after %d pieces\n", c.pieces);

  /* Bad inputs: typed errors, never a crash. */
  const char bad_utf8[] = {'H', 'i', (char)0xff, (char)0xfe, 0};
  st = pocketlm_generate(model, bad_utf8, NULL, NULL, NULL, NULL, NULL, NULL, &error);
  CHECK(st == POCKETLM_STATUS_INVALID_INPUT, "invalid UTF-8 gave %d", st);
  CHECK(strstr(pocketlm_error_message(error), "UTF-8") != NULL, "message: %s", pocketlm_error_message(error));
  pocketlm_error_free(error);
  error = NULL;
  st = pocketlm_generate(NULL, "hi", NULL, NULL, NULL, NULL, NULL, NULL, NULL);
  CHECK(st == POCKETLM_STATUS_INVALID_INPUT, "NULL model gave %d", st);
  params.max_tokens = 0;
  st = pocketlm_generate(model, "hi", &params, NULL, NULL, NULL, NULL, NULL, &error);
  CHECK(st == POCKETLM_STATUS_INVALID_INPUT, "max_tokens 0 gave %d", st);
  pocketlm_error_free(error);
  error = NULL;
  params.max_tokens = 24;
  char *long_prompt = malloc(20001);
  for (int i = 0; i < 20000; i++) long_prompt[i] = "word "[i % 5];
  long_prompt[20000] = 0;
  st = pocketlm_generate(model, long_prompt, &params, NULL, NULL, NULL, NULL, NULL, &error);
  CHECK(st == POCKETLM_STATUS_CONTEXT_OVERFLOW, "long prompt gave %d", st);
  printf("long prompt: %s: %s\n", pocketlm_status_name(st), pocketlm_error_message(error));
  pocketlm_error_free(error);
  free(long_prompt);

  pocketlm_model_free(model);
  pocketlm_model_free(NULL);
  pocketlm_error_free(NULL);
  pocketlm_string_free(NULL);
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("C ABI: all checks passed\n");
  return 0;
}
