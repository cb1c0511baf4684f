"""End-to-end tests: the real ``forgeml`` CLI as a subprocess, on tiny configs in temporary directories.

A package (this file) so that module names such as ``test_resume`` cannot collide with unit tests of
the same name elsewhere under tests/.
"""

import pytest

pytest.register_assert_rewrite(f"{__name__}.support")  # readable assertion messages from the helpers
