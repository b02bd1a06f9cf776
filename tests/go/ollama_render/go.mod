module pyft.test/ollama_render

go 1.19
