# The commands of the README, and the set-up they all run first.
.PHONY: install demo test bench

install:
	bash deploy/local/install.sh

demo: install
	.venv/bin/messagehub demo

test: install
	.venv/bin/python -m pytest -q

bench: install
	.venv/bin/messagehub bench
