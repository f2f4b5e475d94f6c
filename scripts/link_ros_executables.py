"""Link this package's console scripts into <prefix>/lib/qwen_vl_ros/ after a pip install.

`ros2 run qwen_vl_ros describe_node` and launch_ros' Node(package=, executable=) look for
executables only in <prefix>/lib/<package>/ (the ament "libexec" directory). colcon installs
them there (setup.cfg's install_scripts), but pip's wheel install ignores setup.cfg and puts them
into <prefix>/bin/: link each one from there. An old pip without `wheel` (Ubuntu 22.04's)
falls back to `setup.py install`, which does honour setup.cfg and leaves bin/ without them: then
they are linked the other way, so that `qwen-vl-describe` & co. are on PATH. Idempotent.

    python3 scripts/link_ros_executables.py      # with the python of the venv installed into
"""

import sys
from importlib.metadata import distribution
from pathlib import Path

PACKAGE = 'qwen_vl_ros'


def link(prefix: Path) -> list:
    """Make every console script of PACKAGE available in prefix/lib/PACKAGE and prefix/bin.

    Returns the executables' paths in prefix/lib/PACKAGE. Raises FileNotFoundError when a
    script is in neither place (the package is not installed into this prefix).
    """
    scripts = sorted(ep.name for ep in distribution(PACKAGE).entry_points
                     if ep.group == 'console_scripts')
    libexec = prefix / 'lib' / PACKAGE
    libexec.mkdir(parents=True, exist_ok=True)
    for name in scripts:
        target = prefix / 'bin' / name
        dest = libexec / name
        if dest.is_file() and not dest.is_symlink():
            # installed there (pip's legacy `setup.py install`): put it on PATH as well
            if not target.exists():
                target.symlink_to(Path('..', 'lib', PACKAGE, name))
            continue
        if not target.is_file():
            raise FileNotFoundError(f'{target} missing: pip install the package into {prefix}')
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(Path('..', '..', 'bin', name))   # relative: the venv may move
    return [libexec / name for name in scripts]


if __name__ == '__main__':
    made = link(Path(sys.prefix))
    print(f'link_ros_executables: {len(made)} in {made[0].parent}: '
          + ' '.join(p.name for p in made))
