# The two commands of the README, and the set-up both run first.
.PHONY: install demo test

install:
	bash deploy/local/install.sh

demo: install
	.venv/bin/messagehub demo

test: install
	.venv/bin/python -m pytest -q
