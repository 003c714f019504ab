"""Pure nn.Module model code. Imports torch and qwenvl.config only: no files, network, tokenizers or PIL."""
