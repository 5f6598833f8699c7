"""The sweep file: its schema (`schema`), the paper's numbers of a point (`paper`), and the resolved sweep
(`resolved`): one frozen object per loaded file, every path and trial in it.
"""
