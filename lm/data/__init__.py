"""Data: sources -> prepared token shards -> packed windows -> weighted mixture -> TokenDataModule."""
