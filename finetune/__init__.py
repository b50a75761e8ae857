"""Offline training command lines: `python -m finetune.<spam|instruct|pretrain> --help`."""
