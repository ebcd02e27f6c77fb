"""mkdocs-gen-files script: writes the reference pages from the code (recsys_assets.reference)."""

import mkdocs_gen_files

from recsys_assets.reference import PAGES

for name, page in PAGES.items():
    with mkdocs_gen_files.open(f"reference/{name}", "w") as out:
        out.write(page())
    mkdocs_gen_files.set_edit_path(f"reference/{name}", "../recsys_assets/reference.py")
