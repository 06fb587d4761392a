#!/bin/sh
echo "coverage reports are produced by pytest-cov" >&2
exit 0
