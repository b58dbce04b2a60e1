"""Run any model of recbole-prorec or RecBole: python run_recbole_prorec.py --model=PRORec --dataset=ml-100k"""

import sys

from recbole_prorec.cli import main

if __name__ == "__main__":
    sys.exit(main())
