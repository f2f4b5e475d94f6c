"""Compile every Python file under the given paths without writing bytecode; exit 1 on errors.

Run it with the oldest Python the robots have (3.10) to catch newer syntax.
"""
import os
import sys

SKIP_DIRS = {'.venv', 'build', 'install', 'log', '.git', '__pycache__', '.pytest_cache',
             '.ruff_cache'}


def python_files(paths):
    """Yield the .py files under paths (files are yielded as given)."""
    for path in paths:
        if os.path.isfile(path):
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
            for name in sorted(files):
                if name.endswith('.py'):
                    yield os.path.join(root, name)


def main(argv):
    """Check the files and report each syntax error."""
    count, failed = 0, 0
    for path in python_files(argv or ['.']):
        count += 1
        with open(path, 'rb') as f:
            source = f.read()
        try:
            compile(source, path, 'exec', dont_inherit=True)
        except SyntaxError as e:
            failed += 1
            print(f'{path}:{e.lineno}: {e.msg}', file=sys.stderr)
    version = '.'.join(map(str, sys.version_info[:3]))
    print(f'syntax check with Python {version}: {count} files, {failed} with errors')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
