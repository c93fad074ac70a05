// ModelConfig (in progress)
