/* peft: fine-tune, evaluate and inspect adapters from the command line. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: peft COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  train       fine-tune a LoRA adapter on a token file\n"
            "  eval        mean loss and perplexity of a model (+ adapter) on a token file\n"
            "  sweep       train a family of configurations at one parameter budget; report\n"
            "  info        what a model or adapter directory holds; trainable-parameter counts\n"
            "  generate    continue a prompt (greedy or sampled), with or without an adapter\n"
            "  tokenize    text to token ids (a uint32 file or a list)\n"
            "  merge       write base + adapter as a Hugging Face model directory\n"
            "  convert     a LoRA adapter from PEFT to GGUF (llama.cpp --lora) or back\n"
            "  combine     weigh several LoRA adapters into one (PEFT's linear, cat, svd)\n"
            "  init-model  write a small randomly initialised Llama model directory\n"
            "  synth       write a synthetic token file with a learnable pattern\n"
            "  version     print the library version\n"
            "\n"
            "peft COMMAND --help shows the options of a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "train"))
        return cmd_train(argc - 2, argv + 2);
    if (!strcmp(cmd, "eval"))
        return cmd_eval(argc - 2, argv + 2);
    if (!strcmp(cmd, "sweep"))
        return cmd_sweep(argc - 2, argv + 2);
    if (!strcmp(cmd, "info"))
        return cmd_info(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate"))
        return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "convert"))
        return cmd_convert(argc - 2, argv + 2);
    if (!strcmp(cmd, "combine"))
        return cmd_combine(argc - 2, argv + 2);
    if (!strcmp(cmd, "merge"))
        return cmd_merge(argc - 2, argv + 2);
    if (!strcmp(cmd, "tokenize"))
        return cmd_tokenize(argc - 2, argv + 2);
    if (!strcmp(cmd, "init-model"))
        return cmd_init_model(argc - 2, argv + 2);
    if (!strcmp(cmd, "synth"))
        return cmd_synth(argc - 2, argv + 2);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("peft %s (libpeft %s)\n", PEFT_VERSION_STRING, peft_version());
        return 0;
    }
    fprintf(stderr, "peft: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
