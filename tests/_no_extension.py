"""Code that makes `import fsfm_fast._C` fail, for subprocess tests of a missing or broken build."""

BLOCK_EXTENSION = """
import sys
class _BlockExtension:
    def find_spec(self, name, path=None, target=None):
        if name == "fsfm_fast._C":
            raise ImportError("blocked by the test")
sys.meta_path.insert(0, _BlockExtension())
"""
