.PHONY: demo test lint bench
demo:
	bash scripts/demo.sh
test:
	bash scripts/test.sh
lint:
	bash scripts/lint.sh
bench:
	bash scripts/setup.sh all && .venv/bin/python bench/bench_cache.py
