// llama.cpp's tokenizer as an oracle: reads a vocabulary GGUF and texts separated by
// lines "\n__text__\n" on stdin, prints one line of ids per text (no BOS/EOS, special
// tokens not parsed), as llama.cpp's test-tokenizer-0 does.
//   g++ -O2 -std=c++17 tokenize.cpp -I LLAMA/include -I LLAMA/ggml/include \
//       -L LLAMA/build/bin -lllama -lggml -lggml-base -o llama-tokenize-ids
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "llama.h"

int main(int argc, char ** argv) {
    if (argc < 2) return 2;
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::stringstream all;
    all << std::cin.rdbuf();
    std::string text = all.str(), sep = "\n__text__\n";
    size_t start = 0;
    while (true) {
        size_t end = text.find(sep, start);
        std::string piece = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
        std::vector<llama_token> ids(piece.size() * 4 + 16);
        int n = llama_tokenize(vocab, piece.c_str(), (int) piece.size(), ids.data(), (int) ids.size(), false, false);
        for (int i = 0; i < n; ++i) std::printf(i ? " %d" : "%d", ids[i]);
        std::printf("\n");
        if (end == std::string::npos) break;
        start = end + sep.size();
    }
    llama_model_free(model);
    return 0;
}
