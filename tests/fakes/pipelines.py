"""Pipeline files more than one test module runs."""

FAILS_ONCE = """
name: flaky
input_variables:
  flag: {type: string}
tasks:
  - name: counted
    type: python_task
    script: |
      return 1
  - name: fails_once
    type: python_task
    depends_on: [counted]
    script: |
      import os
      if not os.path.exists("{{ flag }}"):
          open("{{ flag }}", "w").close()
          raise RuntimeError("the first run fails")
      return "done"
"""
"""A run that fails at its second task the first time and succeeds when resumed (its input
`flag` names a file the first attempt creates)."""
