// Perplexity with llama.cpp on exactly the token ids and windows `webmoe perplexity`
// uses (llama-perplexity scores only the second half of each chunk and tokenizes
// differently, so its numbers are not comparable). Reads whitespace-separated ids on
// stdin; windows of N tokens, each a fresh sequence from position 0, every position
// after the first scored; log-softmax in double.
//   g++ -O2 -std=c++17 perplexity.cpp -I LLAMA/include -I LLAMA/ggml/include \
//       -L LLAMA/build/bin -lllama -lggml -lggml-base -o llama-ppl
//   llama-ppl MODEL.gguf 256 < ids.txt
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <vector>

#include "llama.h"

int main(int argc, char ** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL.gguf WINDOW < ids\n", argv[0]);
        return 2;
    }
    const int window = std::atoi(argv[2]);
    std::vector<llama_token> ids;
    for (long v; std::cin >> v;) ids.push_back((llama_token) v);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) return 1;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = window;
    cp.n_batch = window;
    cp.n_ubatch = window;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    double nll = 0;
    long predicted = 0;
    for (size_t start = 0; start + 2 <= ids.size(); start += window) {
        const int n = (int) std::min<size_t>(window, ids.size() - start);
        if (n < 2) break;
        llama_memory_clear(llama_get_memory(ctx), true);
        llama_batch batch = llama_batch_init(n, 0, 1);
        for (int i = 0; i < n; ++i) {
            batch.token[i] = ids[start + i];
            batch.pos[i] = i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = 1;
        }
        batch.n_tokens = n;
        if (llama_decode(ctx, batch) != 0) return 1;
        for (int i = 1; i < n; ++i) {
            const float * l = llama_get_logits_ith(ctx, i - 1);
            double max = l[0];
            for (int v = 1; v < n_vocab; ++v) max = std::max(max, (double) l[v]);
            double sum = 0;
            for (int v = 0; v < n_vocab; ++v) sum += std::exp((double) l[v] - max);
            nll += std::log(sum) + max - l[ids[start + i]];
            ++predicted;
        }
        llama_batch_free(batch);
    }
    std::printf("perplexity %.4f over %ld predicted tokens\n", std::exp(nll / predicted), predicted);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
